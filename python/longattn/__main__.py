"""``python -m longattn``: print ``longattn.info()``."""

from . import info

info()
