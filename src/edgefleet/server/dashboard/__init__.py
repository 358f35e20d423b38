"""The fleet dashboard: server-rendered pages (Jinja2, SVG charts, a few lines of
JavaScript to refresh them), served by the control plane under ``/ui``."""
