"""The CDKTF app: `envs/*.yaml` -> one `NanochatStack` per env (see docs/infra.md)."""
