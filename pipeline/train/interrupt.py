"""The one training outcome that is not an error: stopped by a signal, checkpoint written, resumable.

It lives apart from the launcher so the CLI can catch it without importing torch.
"""


class TrainingInterrupted(RuntimeError):
    """A configuration stopped by SIGTERM/SIGUSR1 after writing its checkpoint."""
