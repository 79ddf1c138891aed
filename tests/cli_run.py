"""Run the `isoflop` console script in-process, as a user's shell would, for tests of its output."""

from launch.cli import main


def isoflop(capsys, *argv):
    """(exit code, stdout, stderr) of `isoflop ARGV`; argparse's own exits are caught like any other."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err
