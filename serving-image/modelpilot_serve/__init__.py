"""modelpilot_serve: the serving process inside every model pod (`modelpilot serve`)."""
