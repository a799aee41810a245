"""What goes wrong with a volume, in words for the notebook's owner."""


class VolumeError(RuntimeError):
    """A volume could not be synced; the message is for the notebook's owner."""
