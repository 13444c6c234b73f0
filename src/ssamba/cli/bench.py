"""``ssamba bench`` (moving here from ssamba.bench)."""


def register(subparsers) -> None:
    from ssamba.bench import add_bench_parser

    add_bench_parser(subparsers)
