"""CLI: `python -m learner bench`."""
import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["bench"]:
        print("usage: python -m learner bench", file=sys.stderr)
        return 2
    from .bench import run
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
