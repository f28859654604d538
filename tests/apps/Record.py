"""Record: appends "<n> <pid>\n" to a file with one O_APPEND write (one line per run)."""
import os

from queue import Queueable


class Record(Queueable):
    def __init__(self, path, n):
        self.path, self.n = path, n

    def handle(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{self.n} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
