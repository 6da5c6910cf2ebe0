"""Cache errors. All derive from ``CacheError`` (a ``ValueError``)."""


class CacheError(ValueError):
    """Base class of cache bookkeeping errors."""


class CacheFullError(CacheError):
    """Not enough free pages for a request; raised before any page is taken or any row written."""


class StalePlanError(CacheError):
    """A ``StepPlan`` used out of turn: rerun by a layer, older than one the layer ran, from another
    manager, or naming a freed sequence. Raised before anything is written."""


class UnknownSequenceError(CacheError, KeyError):
    """A sequence id that was never added, or was already freed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
