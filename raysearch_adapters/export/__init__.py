"""A search's winner in the formats it is deployed in: merged into the base model (:mod:`.merged`), or as a
NeMo adapter file (:mod:`.nemo`). Reads a finished search's results folder; needs neither Ray nor the search."""
