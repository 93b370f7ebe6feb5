"""CLI: `python -m learner bench [MODEL]` (step and push times) | `python -m learner memory [MODEL] [key=value ...]`
(peak memory per rank on CPU: 2 ranks, ZeRO-3 unless set; keys: LearnerConfig's, e.g. ranks=2 zero_stage=3)."""
import json
import sys

USAGE = ("usage: python -m learner bench [MODEL] | python -m learner memory [MODEL] [key=value ...]   (MODEL: a preset "
         "or a Hugging Face model directory; default smollm2-135m)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"] and len(argv) <= 2:
        from .bench import run
        print(json.dumps(run(*argv[1:])))
        return 0
    if argv[:1] == ["memory"]:
        from omegaconf import OmegaConf

        from .bench import memory
        model = [a for a in argv[1:] if "=" not in a]
        keys = OmegaConf.to_container(OmegaConf.from_dotlist([a for a in argv[1:] if "=" in a]))  # typed values
        print(json.dumps(memory(*model[:1], **keys)))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
