"""``ssamba convert``, ``average`` (moving here from the library)."""


def register(subparsers) -> None:
    from ssamba.averaging import add_average_parser
    from ssamba.convert import add_convert_parser

    add_convert_parser(subparsers)
    add_average_parser(subparsers)
