"""The one error type of `auralm.checkpoints`."""


class CheckpointError(ValueError):
    """A weights file, folder or name that cannot be loaded; the message names it and says what to do."""
