"""``ssamba demo`` (moving here from ssamba.demo.pipeline)."""


def register(subparsers) -> None:
    from ssamba.demo.pipeline import add_demo_parser

    add_demo_parser(subparsers)
