"""The CDKTF app: one stack per env file, synthesized to `cdktf.out/stacks/<env>/cdk.tf.json`.

    python -m infra.main                   # what `make synth` and `cdktf synth` run (cdktf.json "app")
    npx cdktf deploy dev                   # plan and apply one env (needs credentials, see docs/infra.md)

Env files are validated before cdktf is imported, so a bad file fails in milliseconds with one line on
stderr (exit 2) that names the file and the field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from infra.config import ENVS_DIR, ROOT, ConfigError, EnvConfig, load_envs

DEFAULT_OUTDIR = "cdktf.out"


def configure_jsii() -> None:
    """Defaults for the jsii runtime (node) that cdktf runs on: its caches go under build/, not $HOME."""
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    os.environ.setdefault("JSII_RUNTIME_PACKAGE_CACHE_ROOT", str(ROOT / "build" / "cdktf" / "jsii-cache"))
    os.environ.setdefault("CDKTF_DISABLE_PLUGIN_CACHE_ENV", "1")


def build_app(configs: Sequence[EnvConfig], outdir: str | None = None):
    """A cdktf App holding one NanochatStack per config (not yet synthesized)."""
    configure_jsii()
    from cdktf import App  # the provider import takes seconds: only once the configs are valid

    from infra.stack import NanochatStack

    # `cdktf synth` passes its output folder in CDKTF_OUTDIR; App reads it when outdir is None.
    app = App(outdir=outdir or os.environ.get("CDKTF_OUTDIR") or DEFAULT_OUTDIR)
    for cfg in configs:
        NanochatStack(app, cfg)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    from modules.alert_rules import AlertRuleError
    from modules.dashboards import DashboardError

    envs_dir = (argv if argv is not None else sys.argv[1:]) or [str(ENVS_DIR)]
    try:
        configs = load_envs(envs_dir[0])
        build_app(configs).synth()
    except (ConfigError, AlertRuleError, DashboardError) as exc:
        print(f"infra: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
