"""Build the process runtime's environment virtualenvs on this host."""

from django.core.management.base import BaseCommand, CommandError

from nbcloud.catalog.services import catalog

DEFAULT = "conda"  # the default environment of the embedded platform


class Command(BaseCommand):
    help = (
        "Build the virtualenvs the process runtime runs editors from, under "
        "NBCLOUD_ENVS_DIR. Without arguments, builds the default environment (conda)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "environments",
            nargs="*",
            metavar="FRAMEWORK[:VERSION]",
            help="framework ids, each optionally with a version (default: its default one)",
        )
        parser.add_argument(
            "--all", action="store_true", help="build every version of every framework"
        )
        parser.add_argument("--force", action="store_true", help="rebuild even when up to date")

    def build(self, framework_id: str, version: str, force: bool, log) -> None:
        from workers import environments

        try:
            environments.build(framework_id, version, force=force, log=log)
        except environments.EnvironmentBuildError as exc:
            raise CommandError(str(exc)) from exc

    def handle(self, *args, **options):
        wanted = self._resolve(options["environments"], options["all"])
        verbosity = options["verbosity"]

        def log(message: str) -> None:  # progress, and pip's output indented
            if verbosity:
                self.stdout.write(message)

        for number, (framework_id, version) in enumerate(wanted, start=1):
            if verbosity:
                self.stdout.write(f"[{number}/{len(wanted)}] {framework_id}:{version}")
            self.build(framework_id, version, options["force"], log)
        if verbosity:
            self.stdout.write(self.style.SUCCESS(f"{len(wanted)} environment(s) ready"))

    def _resolve(self, specs: list[str], build_all: bool) -> list[tuple[str, str]]:
        """(framework id, version) pairs, every one checked before anything is built."""
        frameworks = catalog().frameworks
        if build_all:
            if specs:
                raise CommandError("give FRAMEWORK names or --all, not both")
            return [(fw.id, v.version) for fw in frameworks.values() for v in fw.versions]
        wanted = []
        for spec in specs or [DEFAULT]:
            framework_id, _, version = spec.partition(":")
            framework = frameworks.get(framework_id)
            if framework is None:
                raise CommandError(
                    f"unknown framework {framework_id!r}; valid choices: "
                    f"{', '.join(sorted(frameworks))}"
                )
            found = framework.get_version(version)
            if found is None:
                raise CommandError(
                    f"framework {framework_id} has no version {version!r}; valid choices: "
                    f"{', '.join(v.version for v in framework.versions)}"
                )
            pair = (framework.id, found.version)
            if pair not in wanted:
                wanted.append(pair)
        return wanted
