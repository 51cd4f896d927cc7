# Sourced by install-chromium.sh and install-postgres.sh: apt_install PACKAGE installs a Debian package with
# apt-get (as root, or with passwordless sudo), updating the package lists once if the first try fails.
# Returns non-zero, and prints nothing, where it cannot.
apt_install() {
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    command -v apt-get >/dev/null 2>&1 || return 1
    $SUDO apt-get install -y -q "$1" >/dev/null 2>&1 ||
        { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q "$1" >/dev/null 2>&1; }
}
