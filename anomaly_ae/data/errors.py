class DatasetError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""
