"""Django's command line for the bench's post_office project (`python manage.py migrate`, ...)."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench_postoffice.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
