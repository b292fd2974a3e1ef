"""`certdrop serve`: CRL, CA certificates and OCSP over HTTP for relying parties.

server.py     the supervisor process: socket, worker processes, READY=1
keeper.py     what the supervisor becomes then (exec): watchdog, restarts, SIGTERM
http.py       aiohttp: the routes, one worker's event loop
runtime.py    what a worker answers with, built in one place
published.py  the CRL and CA documents of the state folder, read when they change
balance.py    connections spread over the workers
"""
