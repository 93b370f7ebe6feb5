"""CLI: `python -m learner bench [MODEL]`."""
import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["bench"] or len(argv) > 2:
        print("usage: python -m learner bench [MODEL]   (a preset or a Hugging Face model directory; "
              "default smollm2-135m)", file=sys.stderr)
        return 2
    from .bench import run
    print(json.dumps(run(*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
