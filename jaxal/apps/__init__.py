"""Applications built on jaxal's library: the labelling page (``label_server``, the
``ui`` extra) and Label Studio interchange (``label_studio``)."""
