/* Stand-in for the C library's <string.h> (see TargetConditionals.h here):
 * the declarations ring's C code uses, for a type-check only. */
#ifndef D8_STANDIN_STRING_H
#define D8_STANDIN_STRING_H
#include <stddef.h>
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
#endif
