"""What a VLA is to vlatrim: the reference VLA (``models.reference``), language backbones
(``models.backbones``), checkpoint directories (``models.checkpoint``) and the adapters that locate
the language backbone inside any supported model (``models.adapters``)."""
