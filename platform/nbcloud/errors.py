"""The errors the platform's own code raises: one hierarchy, no HTTP in it.

Services, models and host code raise these; each says what went wrong in a
sentence meant for the person who asked (`str(error)`), and in a short code
meant for a program (`error.code`). The API turns them into answers in one
place (`nbcloud.api.errors`); host code catches them by class.
"""


class DomainError(Exception):
    """A request the platform refuses, or could not carry out, with the reason."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class Invalid(DomainError):
    """Bad input; `field` names the part of the request at fault, when there is one."""

    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotAuthenticated(DomainError):
    """The caller's credentials are missing, unknown, expired or disabled."""

    code = "authentication_failed"


class NotFound(DomainError):
    """No such thing, or none that the caller may see."""

    code = "not_found"


class InvalidState(DomainError):
    """The thing's state does not allow the action (or another change won a race)."""

    code = "invalid_state"


class QuotaExceeded(DomainError):
    """The project's quota does not allow this."""

    code = "quota_exceeded"


class BudgetExceeded(DomainError):
    """The project's monthly budget is spent."""

    code = "budget_exceeded"


class Unavailable(DomainError):
    """A service the platform depends on (an object store, a git server) failed or is down."""

    code = "unavailable"
