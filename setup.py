"""setup.py for queue.py.

queue.py is meant to be copied into your project, not installed: a module called `queue` in
site-packages would never be imported, because the standard library's `queue` comes first on
sys.path. So this file installs no module. It declares what the optional drivers and the tests
need, so that one command installs it:

    pip install ".[mysql]"     # the MySQL/MariaDB dialect (pymysql)
    pip install ".[amqp]"      # the RabbitMQ driver (pika)
    pip install ".[postgres]"  # the PostgreSQL dialect (psycopg 3)
    pip install ".[redis]"     # the Redis driver (redis-py)
    pip install ".[beanstalkd]" # the beanstalkd driver (greenstalk)
    pip install ".[sqs]"       # the Amazon SQS driver (boto3)
    pip install ".[test]"      # everything the test suite needs
"""
from setuptools import setup

setup(
    name="queue.py",
    version="1.2.0",
    description="Background jobs for Python applications, in one file (copy queue.py into your project).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    py_modules=[],
    extras_require={
        "mysql": ["pymysql>=1.0"],
        "amqp": ["pika>=1.2"],
        "postgres": ["psycopg[binary]>=3.1"],
        "redis": ["redis>=4.2"],
        "beanstalkd": ["greenstalk>=2.0"],
        "sqs": ["boto3>=1.26"],
        "test": ["pytest>=7", "pytest-xdist>=3", "pymysql>=1.0", "pika>=1.2", "psycopg[binary]>=3.1", "redis>=4.2", "greenstalk>=2.0",
                 "boto3>=1.26", "moto[server]>=5", "hypothesis>=6",
                 # real apps started by their launchers (tests/test_launchers.py)
                 "flask>=2", "gunicorn>=21", "uvicorn>=0.20", "fastapi>=0.100", "django>=4",
                 # the dashboard in a real browser, and /metrics read by Prometheus' own parser
                 "selenium>=4.10", "prometheus_client>=0.16"],
    },
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: MIT License"],
)
