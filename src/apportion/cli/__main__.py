"""`python -m apportion.cli`: the command line without the crash supervisor of the installed
`apportion` command (see `apportion.supervise`)."""

from apportion.cli import app

if __name__ == "__main__":
    app()
