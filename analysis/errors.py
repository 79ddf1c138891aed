"""The one error analysis raises for bad input; the CLI prints it as one line and exits 2."""


class AnalysisError(ValueError):
    """Bad input to a fit: a missing column, a non-positive value, too few points, an unknown option."""


class DegenerateFit(AnalysisError):
    """A fit that ran but means nothing (a parabola opening downward, a minimum off its grid): a bootstrap
    counts these by reason, rather than keeping their estimates."""
