"""``ssamba probe``, ``evaluate`` (moving here from the library)."""


def register(subparsers) -> None:
    from ssamba.evaluation import add_evaluate_parser
    from ssamba.probe import add_probe_parser

    add_probe_parser(subparsers)
    add_evaluate_parser(subparsers)
