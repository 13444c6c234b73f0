"""``ssamba dasl``, ``dasl-build`` (moving here from ssamba.dasl)."""


def register(subparsers) -> None:
    from ssamba.dasl import add_dasl_build_parser, add_dasl_parser

    add_dasl_parser(subparsers)
    add_dasl_build_parser(subparsers)
