"""Who may use the archive over HTTP: users, roles and API tokens kept in the archive root
(``accounts``), OpenID Connect bearer tokens (``oidc``), and log lines safe from what peers
send (``logsafe``)."""
