"""``cellblock console``: the web page a person uses cellblock from.

A chat transcript's code blocks get Run buttons; results stream in live; a
run that needs a capability asks the user and makes the grant through the
protocol; history, grants and the service's status have pages of their own.
The console is one more untrusted client of the broker (it holds no
privilege and no secret but its access token): ``app`` serves it, ``guard``
is what every request passes first, ``api`` turns HTTP into protocol
requests, and ``static/`` is the page itself (plain HTML, CSS and JavaScript,
no build step, nothing fetched from elsewhere).
"""
