"""Errors a user can cause. Pages show them with ``st.error``; the CLI prints them."""


class UserInputError(ValueError):
    """Bad input from a user (file, reference, parameter) with a message that says what to do."""
