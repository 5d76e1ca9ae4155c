"""An app module that fails at import time."""

raise RuntimeError("SECRET-IMPORT-DETAIL: this module cannot be imported")
