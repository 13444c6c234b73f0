"""``ssamba embed`` (moving here from ssamba.embeddings)."""


def register(subparsers) -> None:
    from ssamba.embeddings import add_embed_parser

    add_embed_parser(subparsers)
