"""The system design document's sources: the architecture (`architecture.yaml`, drawn to a PNG) and the
failure modes (`failure_modes.yaml`); `python -m design.build` renders them, with the SLO table from
`loadtest/slo.yaml`, into `docs/design.md` and `docs/design/architecture.png`."""
