"""Install code-server (the vscode editor) on this host, once."""

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Install code-server, which runs the vscode editor, under NBCLOUD_CODE_SERVER_DIR "
        "(default /var/lib/nbcloud/code-server). Does nothing when it is already installed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="reinstall even when installed")

    def handle(self, *args, **options):
        from workers import code_server

        verbosity = options["verbosity"]

        def log(message: str) -> None:
            if verbosity:
                self.stdout.write(message)

        try:
            entry = code_server.ensure_code_server(log=log, force=options["force"])
        except code_server.CodeServerInstallError as exc:
            raise CommandError(str(exc)) from exc
        if verbosity:
            self.stdout.write(
                self.style.SUCCESS(f"code-server {code_server.CODE_SERVER_VERSION} ready: {entry}")
            )
