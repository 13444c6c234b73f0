"""``ssamba data``, ``stats``, ``check-data``, ``prepare`` (moving here from the library)."""


def register(subparsers) -> None:
    from ssamba.cli._old import add_check_data_parser, add_stats_parser
    from ssamba.demo.cli import add_data_parser
    from ssamba.recipes import add_prepare_parser

    add_data_parser(subparsers)
    add_stats_parser(subparsers)
    add_check_data_parser(subparsers)
    add_prepare_parser(subparsers)
