#!/usr/bin/env python3
# A faithful Python 3 port of the seed's date.py (shared/seed/dmtcp-workflow.txt):
# writes "today is" to test.time (in the current directory), then for each
# iteration opens test.time in append mode, increments a counter, sleeps,
# gets the hostname, prints, and appends "<time>\t<number>\t<hostname>\n".
# Finally prints the whole file.
# Optional arguments (so tests can run it faster): ITERATIONS (default 900)
# and SLEEP_SECONDS (default 1).
import datetime
import socket
import sys
import time

iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 900
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 1

test_time = open('test.time', 'w')
test_time.write('today is\n')
test_time.close()
number = 0
for i in range(iterations):
    test_time = open('test.time', 'a')
    today = time.strftime("%c")
    number += 1
    time.sleep(delay)
    hostname = socket.gethostname()
    print(today, hostname)  # 2008-03-09 <type 'datetime.date'>
    test_time.flush()
    test_time.write(str(today))
    test_time.write('\t')
    test_time.write(str(number))
    test_time.write('\t')
    test_time.write(str(hostname))
    test_time.write('\n')
    test_time.close()
for line in open('test.time'):
    print(line, end='')
