/* Stand-in for the C library's <stdlib.h> (see TargetConditionals.h here):
 * for a type-check only. */
#ifndef D8_STANDIN_STDLIB_H
#define D8_STANDIN_STDLIB_H
#include <stddef.h>
void abort(void);
#endif
