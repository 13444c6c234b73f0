"""``ssamba plot`` (moving here from ssamba.plots)."""


def register(subparsers) -> None:
    from ssamba.plots import add_plot_parser

    add_plot_parser(subparsers)
