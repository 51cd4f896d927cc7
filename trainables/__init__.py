"""The Ray Tune trainable: a plain function of a config dict."""
