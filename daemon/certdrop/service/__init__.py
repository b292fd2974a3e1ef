"""The service: runtime wiring, daemon lifecycle, operator control, systemd, scheduler, metrics."""
