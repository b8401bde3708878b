"""Everything that talks to the AUTOMATIC1111 WebUI (its ``modules.*``): the host adapter over ``shared.sd_model``
(``adapter``), the Train tab's and the /scal-sdt/v1 API's runs (``service``), the txt2img/img2img aesthetic hook
(``aesthetic``). Importable only inside the WebUI."""
