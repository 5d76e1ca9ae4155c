"""gateway.py wrapped in wsgiref.validate.validator, with warnings as errors:
any PEP 3333 violation by the gateway raises inside the app and shows up as a
500 plus a traceback on stderr."""
import warnings
from wsgiref.validate import validator

import gateway

warnings.simplefilter("error")
application = validator(gateway.application)
