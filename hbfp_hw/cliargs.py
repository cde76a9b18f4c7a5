"""Argument types shared by the ``hbfp-hw`` subcommands: each error names the flag and range."""

import argparse

__all__ = ["positive_int", "positive_float", "seed"]


def positive_int(flag, maximum=None):
    """``type=`` for an integer flag that must be at least 1 (and at most ``maximum``)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(
                f"{flag} must be in [1, {maximum}], not {value}")
        return value
    return parse


def positive_float(flag):
    """``type=`` for a number flag that must be positive."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, not {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{flag} must be positive, not {text}")
        return value
    return parse


def seed(text):
    """``type=`` for ``--seed``: an integer in ``[0, 2**32 - 1]``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, not {text!r}") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"--seed must be between 0 and 4294967295, not {value}")
    return value
