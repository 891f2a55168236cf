"""The notebooks' experiments, apart from the method: the shared training recipe (:mod:`.recipe`,
:mod:`.presets`, :mod:`.parallel`), Table 1 (:mod:`.style_transfer`), Table 2 (:mod:`.segmentation`,
:mod:`.unet`, :mod:`.augment`), Figs 8-9 (:mod:`.extractors`), the teaching helpers and the explorer
(:mod:`.teaching`, :mod:`.explorer`), tables/figures/records (:mod:`.records`) and the report's
words (:mod:`.wording`). Experiments import the library; the library never imports them (the CLI's
``train --method`` goes through :mod:`.recipe`, ``train --config`` reads presets through :mod:`.presets`)."""
