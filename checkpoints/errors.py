"""The one error type of `auralm.checkpoints`."""

from auralm.errors import AuralmError


class CheckpointError(AuralmError):
    """A weights file, folder or name that cannot be loaded; the message names it and says what to do."""
