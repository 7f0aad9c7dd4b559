"""`make demo`: prepare the default corpus and train the tiny-cpu preset end to end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from steadylm.cli.train import summary
from steadylm.config import load_config
from steadylm.errors import SteadyLMError
from steadylm.train.trainer import Trainer


def main() -> int:
    cfg = load_config("tiny-cpu")
    out = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"steadylm demo: training preset tiny-cpu on the default corpus into {out}", flush=True)
    try:
        result = Trainer(cfg, out).fit()
    except SteadyLMError as e:
        print(f"steadylm demo: error: {e}", file=sys.stderr)
        return 2
    d = cfg.model.n_embd
    print(summary(result))
    print(f"(at GPT-2 init, mu_TEV = 0.0200 and sigma_TEV = 0.02/sqrt(2d) = {0.02 / (2 * d) ** 0.5:.6f})")
    print(f"next: steadylm tev {out}   |   steadylm sample {out} --prompt 'ROMEO:'")
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
