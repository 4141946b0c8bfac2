"""Sub-commands of `hebbir`; `common` holds the options they share."""
