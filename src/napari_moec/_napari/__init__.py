"""The napari adapters: everything napari loads through ``napari.yaml`` (the dock widget, the
reader, the sample) and what they are built from. The only part of napari-moec that imports Qt
or napari; the core (``napari_moec``) never imports this package.

- the dock widget: ``widget`` (``MoecWidget``: builds the panel, holds the parts), made of
  ``widget_settings``/``widget_tiled_settings`` (controls generated from the option
  declarations), ``widget_request`` (``RunRequest``: what Start asks for, read once),
  ``widget_panel`` (``RunPanel``, the ``Run`` protocol), ``widget_single`` (``SingleRun``),
  ``widget_tiled`` (``TiledRun``, ``TiledStores``), ``widget_results``
  (``ResultsController``: Save, Load, Compare), ``widget_lifecycle`` (``CloseWatcher``),
  ``store_files`` (the scratch stores of tiled runs, Save of a store);
- what runs in napari workers: ``widget_run`` (training, decoding, measuring), ``tiled_run``;
- live and lazy layers: ``live_view``, ``tiled_live``, ``lazy``/``lazy_blocks`` (multiscale
  arrays decoded on demand), ``stream_compare``, ``layers`` (names, styles, the label offset);
- npe2 contributions: ``reader``, ``sample_data``.
"""
