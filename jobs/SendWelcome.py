"""SendWelcome: an example job. Push it with `python queue.py push SendWelcome "ada@example.com"`."""
from queue import Queueable


class SendWelcome(Queueable):
    tries = 3            # attempts before the job is failed
    timeout = 30         # seconds one attempt may run
    backoff = [5, 60]    # seconds before attempt 2, then 3

    def __init__(self, email):
        self.email = email

    def handle(self):
        print(f"welcome mail sent to {self.email}")

    def failed(self, exc):
        print(f"could not welcome {self.email}: {exc}")
