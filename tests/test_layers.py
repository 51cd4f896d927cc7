"""The layers of anomaly_ae/__init__.py hold: no module imports from a layer above its own."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Core layers, then what serves the sweep; analysis and benchmarks only read and measure.
CORE = {"stats": 1, "data": 2, "models": 2, "detector": 3, "tracking": 4}
PACKAGES = {"search_spaces": 5, "trainables": 6, "sweeps": 7, "analysis": 8, "benchmarks": 8}
IMPORT = re.compile(r"^\s*(?:from|import) ((?:anomaly_ae|search_spaces|trainables|sweeps|analysis|benchmarks)[\w.]*)",
                    re.M)


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "anomaly_ae":
        return CORE.get(parts[1], 0) if len(parts) > 1 else 0
    return PACKAGES.get(parts[0])


def upward_imports(root: Path = REPO) -> list[str]:
    found = []
    for path in sorted(root.glob("*/**/*.py")):
        if path.relative_to(root).parts[0] not in {"anomaly_ae", *PACKAGES}:
            continue
        own = layer(".".join(path.relative_to(root).with_suffix("").parts))
        for imported in IMPORT.findall(path.read_text()):
            other = layer(imported)
            if other is not None and other > own and not (own == other == 8 or (own == 8 and other < 8)):
                found.append(f"{path.relative_to(root)} imports {imported}")
    return found


def test_no_module_imports_from_a_layer_above_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "anomaly_ae" / "stats").mkdir(parents=True)
    (tmp_path / "anomaly_ae" / "stats" / "bad.py").write_text("def f():\n    from anomaly_ae.tracking import x\n")
    assert upward_imports(tmp_path) == ["anomaly_ae/stats/bad.py imports anomaly_ae.tracking"]
