"""``ssamba pretrain``, ``finetune``, ``crossval`` (moving here from the library)."""


def register(subparsers) -> None:
    from ssamba.crossval import add_crossval_parser
    from ssamba.finetune import add_finetune_parser
    from ssamba.pretrain import add_pretrain_parser

    add_pretrain_parser(subparsers)
    add_finetune_parser(subparsers)
    add_crossval_parser(subparsers)
